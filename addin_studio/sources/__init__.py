"""Where models and data come from: models by name from timm/torchvision/transformers (:mod:`.models`),
image folders (:mod:`.image_folder`) and the embedded offline data (:mod:`.data`). Submodules load on
import only."""
