"""Scorers behind one small interface (CLIP, PickScore, aesthetic), their stand-ins, preference picking."""
