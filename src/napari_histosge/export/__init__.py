"""Export: expression maps as rasters and figures with a legend and scale bar, region tables, scanpy's view."""
