"""Running a trace where the model lives, on an NDIF server: what may travel (`portable`),
the protocol (`transport`) and a strict local simulation of it (`simulation`). The
backend a run uses is chosen in `avmech.backends`."""
