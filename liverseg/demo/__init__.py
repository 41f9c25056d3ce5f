"""``liverseg_demo``: phantoms, plan, train, predict, evaluate and an overview picture in one command."""
