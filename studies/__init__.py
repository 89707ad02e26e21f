"""klip's experiment layer: `klip study` (Optuna studies of a shape's parameters) and `klip compare`
(grids of entries x tasks x seeds), on one storage opener (`storage`), one worker layer
(`workers`), one progress reporter (`progress`), one random-policy and reference scorer
(`references`) and one door into the training engine (`training`). docs/studies.md and
docs/compare.md say what each command records and what it never loses."""
