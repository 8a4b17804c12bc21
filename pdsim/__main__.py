from pdsim.cli import main

main()
