"""The composed config: validation across groups (`validation`), the OmegaConf resolvers the
config tree uses (`resolvers`) and the dry run of a sweep (`sweep_plan`)."""
