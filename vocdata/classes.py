"""The 20 Pascal VOC object classes, in the official (alphabetical) order.

Column c of every score or label matrix in this project is class `VOC_CLASSES[c]`.
"""

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES: int = len(VOC_CLASSES)
