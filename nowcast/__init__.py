"""nowcast: precipitation nowcasting from weather-radar HDF5."""
