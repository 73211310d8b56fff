"""What RAFT computes: the sequence model (:mod:`.raft`), its regrouped update block (:mod:`.fast_update`), the
fused correlation lookup (:mod:`.corr_lookup`), per-model facts (:mod:`.specs`), weights (:mod:`.weights`) and
the compute sizes and batch limits they allow (:mod:`.compute_size`)."""
