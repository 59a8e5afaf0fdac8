"""Teacher correction and alignment (SteerLM-style attribute-conditioned SFT, DPO) on TRL."""
