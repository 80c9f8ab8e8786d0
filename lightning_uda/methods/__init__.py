"""Adaptation methods as LightningModules (one short file per method)."""

from lightning_uda.methods.adaptsegnet import AdaptSegNetModule
from lightning_uda.methods.advent import AdvEntModule
from lightning_uda.methods.base import UDAModule, poly_lr_factor
from lightning_uda.methods.classmix import ClassMixModule, MixInputs
from lightning_uda.methods.dacs import DACSModule
from lightning_uda.methods.daformer import DAFormerModule
from lightning_uda.methods.dann import DANNModule, PixelDomainClassifier
from lightning_uda.methods.fda import FDAModule, robust_entropy
from lightning_uda.methods.hrda import HRDAModule, multi_resolution_loss
from lightning_uda.methods.lsd_seg import LSDSegModule
from lightning_uda.methods.mcc import MCCModule
from lightning_uda.methods.mic import MICModule
from lightning_uda.methods.minent import MinEntModule
from lightning_uda.methods.multi_level import MultiLevelModule
from lightning_uda.methods.self_training import SelfTrainingModule
from lightning_uda.methods.source_only import SourceOnlyModule
from lightning_uda.methods.vfm_uda import VFMUDAModule, VFMUDAPlusPlusModule

__all__ = [
    "AdaptSegNetModule",
    "AdvEntModule",
    "ClassMixModule",
    "DACSModule",
    "DAFormerModule",
    "DANNModule",
    "FDAModule",
    "HRDAModule",
    "LSDSegModule",
    "MCCModule",
    "MICModule",
    "MinEntModule",
    "MixInputs",
    "MultiLevelModule",
    "PixelDomainClassifier",
    "SelfTrainingModule",
    "SourceOnlyModule",
    "UDAModule",
    "VFMUDAModule",
    "VFMUDAPlusPlusModule",
    "multi_resolution_loss",
    "poly_lr_factor",
    "robust_entropy",
]
