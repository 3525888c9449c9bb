"""Pure torch math of CASS and CDAM: one function per equation of the spec. No I/O, no FiftyOne."""
