"""The seeded fault model shared by simulation and the real wire: client speeds, links and lost
chunks (`network`), straggler processes and gradient-coding delay patterns (`stragglers`), trace
files (`traces`), and crash points for chaos tests (`crash`)."""
