"""``vdistill profile``: what a recipe costs at its real size, predicted on the CPU without weights.

The recipe's YAML is read as data (:mod:`.recipe`); its teacher is built at real size on the meta device from the
shipped ``config.json`` files of ``vdistill/assets/configs`` (:mod:`.models`); one training step of the recipe's own
objectives and one sampled video of teacher and student are traced with torch's FLOP formulas and a live-bytes
counter (:mod:`.trace`, :mod:`.counter`); parameters, gradients and optimizer state per rank follow from the strategy
(:mod:`.memory`); :mod:`.command` prints the table and writes the JSON.
"""
