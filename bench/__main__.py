from tbps_bench.cli import main

raise SystemExit(main())
