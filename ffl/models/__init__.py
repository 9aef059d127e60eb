from ffl.models.backbone import Backbone, BackboneSpec
from ffl.models.registry import backbone_spec, build_backbone
from ffl.models.subnetworks import Classifier, SubNetworks, check_fusable

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Classifier",
    "SubNetworks",
    "backbone_spec",
    "build_backbone",
    "check_fusable",
]
