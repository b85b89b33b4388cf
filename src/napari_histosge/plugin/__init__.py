"""The napari side: npe2 reader, writer, sample data and the dock widgets (the only code importing Qt or napari)."""
