from hmic.cli import main

main()
