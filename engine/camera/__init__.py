"""Frame cameras: EXIF/XMP tags, the collinearity model, interior orientation and placement
on the terrain, shared by the UAV/UAS, Aerial and ScannedAerial raster types."""
