from nodepilot.cli import main

main()
