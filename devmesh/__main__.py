from devmesh.cli.main import main

main()
