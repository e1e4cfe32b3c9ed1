from voicebridge.cli import main

raise SystemExit(main())
