"""The spatial augmentation's ranges (light: the predictor checks test-time scales against them
without importing the training stack)."""

ROTATION_DEG = 15.0  # knees come roughly aligned
SCALE = (0.75, 1.3)  # zoom factors of the training patches; also the test-time scales allowed
