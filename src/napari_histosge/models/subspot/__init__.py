"""The sub-spot model: expression on a grid of cells from the measured spots and the H&E, consistent with them."""
