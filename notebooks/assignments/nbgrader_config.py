# nbgrader configuration for the taskspace course assignments: copy this file into the course
# folder (the one holding source/, release/, submitted/, autograded/, gradebook.db); see README.md.
c = get_config()  # noqa: F821 (provided by nbgrader / traitlets when the file is loaded)

c.CourseDirectory.course_id = "taskspace"

# Every assignment loads a model and scores or tunes it: cells may take minutes on a laptop CPU
# (nbgrader's default is 30 s per cell).
c.Execute.timeout = 900

# The student stub that replaces each ### BEGIN SOLUTION ... ### END SOLUTION region.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
