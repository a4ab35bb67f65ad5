from vaultkeeper.cli.main import main

main()
