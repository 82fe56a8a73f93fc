"""Raw public data sets → prepared imagefolder sets (``selora prepare``).

One module per data set turns its official distribution into candidate records and registers
itself (:mod:`selora.data.registry`: name, params section, paper size and splits, parser);
:mod:`selora.data.pipeline` decodes, splits and writes them with the
data report (:mod:`selora.data.report`). Each module's docstring states its rules.
"""

from selora.data.common import PrepareOptions
from selora.data.pipeline import default_splits, paper_size, parse_splits, prepare
from selora.data.registry import DatasetSpec, dataset_names, dataset_spec, dataset_specs, register_dataset

__all__ = ["DatasetSpec", "PrepareOptions", "dataset_names", "dataset_spec", "dataset_specs",
           "default_splits", "paper_size", "parse_splits", "prepare", "register_dataset"]
