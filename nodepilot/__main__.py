from nodepilot.entry import main

main()
