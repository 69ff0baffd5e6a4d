from katapool.cli.main import main

raise SystemExit(main())
