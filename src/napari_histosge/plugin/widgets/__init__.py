"""The plugin's dock widgets and the pure layer data they show."""
