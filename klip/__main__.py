from klip.cli import main

raise SystemExit(main())
