"""What every layer of the core shares: the package's logger (:mod:`.log`) and where its files live (:mod:`.paths`)."""
