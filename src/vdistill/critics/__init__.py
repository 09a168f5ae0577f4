"""Reward critics: frozen text-image / text-video models that score pixel videos against prompts.

``load_critic(name, checkpoint=..., **options)`` builds one from its official checkpoint (offline, strict):

========================  =======  ======================================================================
name                      kind     checkpoint (official file) and options
========================  =======  ======================================================================
``hpsv2``                 image    ``HPS_v2.1_compressed.pt``
``pickscore``             image    ``PickScore_v1/`` folder; ``processor=`` laion CLIP-ViT-H-14 folder
``viclip``                video    ``ViClip-InternVid-10M-FLT.pth``
``internvideo2``          video    ``InternVideo2-stage2_1b-224p-f4.pt``; ``tokenizer=`` bert-large-uncased
``toy-image``             image    ``"shipped"`` or a ``.safetensors`` file (toy world, see ``critics/toy.py``)
``toy-video``             video    ``"shipped"`` or a ``.safetensors`` file (toy world)
========================  =======  ======================================================================

Every critic also takes ``size="tiny"`` (random weights when ``checkpoint=None``, for tests) and ``num_frames``.
New critics register with ``@register_critic("name")``.
"""

from vdistill.critics.base import Critic
from vdistill.critics.registry import CRITICS, available_critics, load_critic, register_critic

# Importing the modules registers their critics.
from vdistill.critics import hpsv2, internvideo2, pickscore, toy, viclip  # noqa: E402,F401  isort: skip

__all__ = ["CRITICS", "Critic", "available_critics", "load_critic", "register_critic"]
