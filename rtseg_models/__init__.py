"""rtseg_models: CSFCN, SGCPNet, FBSNet and MSFNet built from rtseg_ops (not yet implemented)."""
