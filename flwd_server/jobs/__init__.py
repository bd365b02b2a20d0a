"""Jobs: the files that declare them (:mod:`.files`) and the arguments a run gives them (:mod:`.arguments`)."""
