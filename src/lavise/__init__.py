"""lavise: explain what every filter of a CNN has learned, in words.

An implementation of "Explaining Deep Convolutional Neural Networks via Latent
Visual-Semantic Filter Attention" (Yang, Kim, Joo, CVPR 2022).

Example:
    >>> import lavise
    >>> explainer = lavise.train("efficientnet-lite0", "coco-panoptic:sample/coco-panoptic", "train2017")
    >>> result = lavise.explain(explainer, "coco-panoptic:sample/coco-panoptic", "val2017")
    >>> print(result.table())
"""

from lavise._cache import CacheDamaged
from lavise.api import explain, train
from lavise.checkpoint import CheckpointError, upgrade_checkpoint
from lavise.config import Config
from lavise.datasets import list_dataset_formats, load_dataset
from lavise.explain import Explanations, FilterExplanation, TopImage
from lavise.explainer import ConceptSplit, Explainer, ExplainerHead, hinge_rank_loss
from lavise.features import FeatureStore, extract_features
from lavise.identity import content_hashes
from lavise.masking import get_masking_method, list_masking_methods
from lavise.models import (
    FeatureHook,
    LayerInfo,
    TargetModel,
    list_layers,
    list_models,
    load_model,
    wrap_model,
)
from lavise.preprocessing import Preprocessing
from lavise.report import build_report
from lavise.statistics import FilterStats, compute_filter_stats
from lavise.vocabulary import list_vocabularies, load_vocabulary
from lavise.words import RankedWord, WordRanking, list_word_rankings, select_words
from lavise.wordspace import WordSpace, list_word_spaces, load_word_space
from lavise.compare_groups import GroupComparison, compare_groups
from lavise.compare_models import ModelComparison, compare_models
from lavise.finetune import FinetuneResult, finetune
from lavise.labels import LabelSet, load_labels

__version__ = "0.1.0"

__all__ = [
    "CacheDamaged",
    "CheckpointError",
    "upgrade_checkpoint",
    "Config",
    "ConceptSplit",
    "Explainer",
    "ExplainerHead",
    "Explanations",
    "FeatureHook",
    "FeatureStore",
    "FilterExplanation",
    "FilterStats",
    "LayerInfo",
    "Preprocessing",
    "RankedWord",
    "TargetModel",
    "TopImage",
    "WordSpace",
    "build_report",
    "compute_filter_stats",
    "content_hashes",
    "explain",
    "extract_features",
    "get_masking_method",
    "hinge_rank_loss",
    "list_dataset_formats",
    "list_layers",
    "list_masking_methods",
    "list_models",
    "list_vocabularies",
    "list_word_spaces",
    "load_dataset",
    "load_model",
    "load_vocabulary",
    "load_word_space",
    "select_words",
    "WordRanking",
    "list_word_rankings",
    "train",
    "wrap_model",
    # comparing groups and models, fine-tuning (paper 4.5.5, 4.6)
    "FinetuneResult",
    "GroupComparison",
    "LabelSet",
    "ModelComparison",
    "compare_groups",
    "compare_models",
    "finetune",
    "load_labels",
]
