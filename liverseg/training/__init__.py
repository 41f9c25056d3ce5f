"""Training: losses, optimisers and schedules, deep supervision, sampling, the trainer loop."""
