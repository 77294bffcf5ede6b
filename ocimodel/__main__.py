from ocimodel.cli import main

main()
