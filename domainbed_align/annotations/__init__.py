"""Annotation masks: how they travel with the images and how a method reads them."""

# A sample's annotation channel filled with this value means "no mask for this image" (for mask folders with gaps;
# no dataset of this release produces it).
MISSING_ANNOTATION = -1.0


class ShapeWithMaskChannel(tuple):
    """A dataset's ``input_shape`` whose last channel is the ground-truth mask (our datasets with ``gt_masks``).

    The marker is how an annotation method knows the extra channel is there: ``gt_masks: true`` on a dataset without
    masks (e.g. upstream's Debug28) would otherwise make it read the last colour channel as a mask. It pickles as a
    plain tuple (model.pkl stays loadable with ``weights_only``); checkpoints re-mark it from the run's hparams.
    """

    has_mask_channel = True

    def __reduce__(self) -> tuple:
        return (tuple, (tuple(self),))
