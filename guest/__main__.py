import sys

from guest.main import main

sys.exit(main())
