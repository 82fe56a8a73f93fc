"""Raw public data sets → prepared imagefolder sets (``selora prepare``).

One module per data set turns its official distribution into candidate records
(:mod:`selora.data.iuxray`, :mod:`selora.data.montgomery`, :mod:`selora.data.patchgastric`,
:mod:`selora.data.synthetic`); :mod:`selora.data.pipeline` decodes, splits and writes them with the
data report (:mod:`selora.data.report`). Each module's docstring states its rules.
"""

from selora.data.common import PrepareOptions
from selora.data.pipeline import DATASETS, PAPER_SIZE, default_splits, parse_splits, prepare

__all__ = ["DATASETS", "PAPER_SIZE", "PrepareOptions", "default_splits", "parse_splits", "prepare"]
