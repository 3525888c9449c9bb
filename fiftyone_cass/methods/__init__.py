"""Segmentation methods, registered by name as timm registers models.

A method is a *family* (``cass``, ``naclip``, ``maskclip``: how CLIP's last block attends and how
patch features become query logits), optionally with ``+cdam`` on top (CDAM's re-prediction of
the last block, SPEC G/H). Each family is a small module defining a :class:`MethodFamily` subclass
decorated with :func:`register_family`; the :class:`~fiftyone_cass.models.segmenter.Segmenter`
calls its hooks and holds no per-method branches. A new family: a module here, registered by
name, imported below; it is then a valid ``method=`` (and ``<name>+cdam``) everywhere.
"""

from fiftyone_cass.methods.base import FamilyOutput, MethodFamily, get_family, method_names, register_family, split_method  # noqa: F401
from fiftyone_cass.methods import cass, naclip, maskclip  # noqa: F401,E402  (import order = registration order = METHODS order)
