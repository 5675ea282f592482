from quiltmount.cli import main

raise SystemExit(main())
