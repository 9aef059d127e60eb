"""Every method of the package, registered by name on import (one file each)."""

from __future__ import annotations

from ffl.errors import SettingError
from ffl.methods.base import Method

# Each method registers itself by name when its file is imported; the classes are exported here
# by name too, so that editors and type checkers see them (a test holds this list to the registry).
from ffl.methods.dml import DML
from ffl.methods.dualnet import DualNet
from ffl.methods.ffl import FFL
from ffl.methods.kdcl import KDCL
from ffl.methods.lmcl import LMCL
from ffl.methods.mcl import MCL
from ffl.methods.okddip import OKDDip
from ffl.methods.one import ONE
from ffl.methods.pcl import PCL
from ffl.methods.registry import METHODS, build_method, method_class, register_method
from ffl.methods.vanilla import Vanilla

__all__ = [
    "DML",
    "FFL",
    "KDCL",
    "LMCL",
    "MCL",
    "METHODS",
    "ONE",
    "PCL",
    "DualNet",
    "Method",
    "OKDDip",
    "SettingError",
    "Vanilla",
    "build_method",
    "method_class",
    "register_method",
]
