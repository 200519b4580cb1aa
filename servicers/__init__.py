"""The 22 gRPC servicers of the game's AI core: business logic only, no transport code."""
