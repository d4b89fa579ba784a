"""Training: the U-Net, loss, patch loading and augmentation, and the generic trainer."""
