"""Colour palettes of the datasets' train ids, shared by predict and rtseg_train's previews."""

# Colours of the train ids: Cityscapes' official label colours for its 19 classes, and the
# CamVid colours of the 11-class SegNet split (sky, building, pole, road, sidewalk, tree,
# sign, fence, car, pedestrian, bicyclist).
PALETTES = {
    "cityscapes": [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
                   (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
                   (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
                   (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230),
                   (119, 11, 32)],
    "camvid": [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192),
               (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
               (0, 128, 192)],
}
