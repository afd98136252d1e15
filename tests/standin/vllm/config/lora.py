"""Stand-in of vllm/config/lora.py (0.32.0): the max_lora_rank values LoRAConfig accepts."""

from typing import Literal

MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]  # vllm/config/lora.py:26
