"""What the Reformer's tricks cost in quality: byte-level corpora, bits per byte, and how closely
LSH attention approximates full attention on real activations (issue #13's foundations)."""
