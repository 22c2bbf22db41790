"""Plumbing every layer may use; it imports no other package of the project.

* `errors`: one-sentence user errors and the scripts' exit on them; `validation`: the flag validators of
  every script's `check_args`;
* `io`: atomic writes, background writes, JSON reading, the git revision; `seed`: seeding and
  determinism; `device`: device choice and the fast path (bf16 autocast + channels_last on a GPU and on a
  CPU with native bf16); `distributed`: DDP set-up; `progress`: progress bars.
"""
