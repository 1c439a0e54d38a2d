"""Desktop trainer for edge-gfs: CAPL base training, the plain baseline and the fully supervised oracle."""
